"""Command-line interface (typer): thin wrappers that parse, call the library and print."""
