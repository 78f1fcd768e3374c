from ollama_img.cli.engine_commands import PS_HEADERS, ps_rows
from ollama_img.cli.table import format_table
from ollama_img.humanize import human_bytes, human_duration, until


def test_sizes_in_decimal_units_like_ollama():
    assert human_bytes(912) == "912 B"
    assert human_bytes(5_400_000) == "5.4 MB"
    assert human_bytes(274_000_000) == "274 MB"
    assert human_bytes(6_600_000_000) == "6.6 GB"
    assert human_bytes(20_000_000_000) == "20 GB"


def test_until_reads_like_ollama_ps():
    assert until(299.5) == "4 minutes from now"
    assert until(30) == "30 seconds from now"
    assert until(90) == "About a minute from now"
    assert until(3600 * 3) == "3 hours from now"
    assert until(None) == "Forever"
    assert until(float("inf")) == "Forever"
    assert until(0) == "Stopping..."
    assert human_duration(0.2) == "Less than a second"


def test_ps_table_columns():
    models = [
        {
            "name": "z-image:latest",
            "id": "0123456789ab",
            "size": 12_300_000_000,
            "processor": "100% GPU",
            "expires_at": "2030-01-01T00:00:00Z",
            "expires_in": 250.0,
        },
        {
            "name": "other:v2",
            "id": "ba9876543210",
            "size": 5_000_000,
            "processor": "100% CPU",
            "expires_at": None,
        },
    ]
    lines = format_table(PS_HEADERS, ps_rows(models)).splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert lines[1].split(None, 3)[:3] == ["z-image:latest", "0123456789ab", "12"]
    assert lines[1].endswith("4 minutes from now") and "100% GPU" in lines[1]
    assert lines[2].endswith("Forever") and "100% CPU" in lines[2]
    # columns line up under their headers
    assert lines[1].index("0123456789ab") == lines[0].index("ID") == lines[2].index("ba9876543210")
    assert lines[1].index("4 minutes") == lines[0].index("UNTIL") == lines[2].index("Forever")


def test_empty_ps_is_just_the_header():
    assert format_table(PS_HEADERS, ps_rows([])) == "NAME   ID   SIZE   PROCESSOR   UNTIL"
