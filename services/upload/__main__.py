from services.upload.main import main

main()
