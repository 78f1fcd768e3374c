from ollama_img.engine.main import main

main()
