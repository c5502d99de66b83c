from audit.cli import run

run()
