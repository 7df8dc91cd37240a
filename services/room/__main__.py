from services.room.main import main

main()
