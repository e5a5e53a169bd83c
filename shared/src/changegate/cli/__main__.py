from changegate.cli.main import app

app(prog_name="changegate")
