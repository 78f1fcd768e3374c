from ollama_img.cli.console import entry

entry()
