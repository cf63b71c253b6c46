from services.inference.main import main

main()
