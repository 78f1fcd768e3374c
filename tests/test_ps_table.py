from ollama_img.cli.engine_commands import PS_HEADERS, ps_rows
from ollama_img.formatting import human_duration, human_until, table


def test_until_reads_like_ollama_ps():
    assert human_until(299.5) == "4 minutes from now"
    assert human_until(30) == "30 seconds from now"
    assert human_until(90) == "About a minute from now"
    assert human_until(3600 * 3) == "3 hours from now"
    assert human_until(None) == "Forever"
    assert human_until(float("inf")) == "Forever"
    assert human_until(0) == "Stopping..."
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
    lines = table([PS_HEADERS, *ps_rows(models)]).splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    assert lines[1].split()[:4] == ["z-image:latest", "0123456789ab", "12", "GB"]
    assert lines[1].endswith("4 minutes from now") and "100% GPU" in lines[1]
    assert lines[2].endswith("Forever") and "100% CPU" in lines[2]
    # columns line up under their headers
    assert lines[1].index("0123456789ab") == lines[0].index("ID") == lines[2].index("ba9876543210")
    assert lines[1].index("4 minutes") == lines[0].index("UNTIL") == lines[2].index("Forever")


def test_empty_ps_is_just_the_header():
    assert table([PS_HEADERS, *ps_rows([])]).split() == PS_HEADERS
