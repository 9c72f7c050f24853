from siamese.cli import app

app()
