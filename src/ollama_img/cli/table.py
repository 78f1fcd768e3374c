"""Aligned columns as ollama prints them (`ps`, `list`): left-aligned, three spaces apart."""


def format_table(headers: list[str], rows: list[list[str]], gap: int = 3) -> str:
    columns = [headers, *rows]
    widths = [max(len(str(row[i])) for row in columns) for i in range(len(headers))]
    lines = []
    for row in columns:
        cells = [str(cell).ljust(width + gap) for cell, width in zip(row, widths, strict=True)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)
