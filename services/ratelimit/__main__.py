from services.ratelimit.main import main

main()
