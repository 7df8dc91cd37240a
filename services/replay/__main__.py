from services.replay.main import app

app(prog_name="durachat-replay")
