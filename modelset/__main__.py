from modelset.cli import app

app(prog_name="modelset")
