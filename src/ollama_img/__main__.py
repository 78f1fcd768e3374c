from ollama_img.cli.app import main

main()
