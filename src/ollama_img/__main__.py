from ollama_img.cli.app import entry

entry()
