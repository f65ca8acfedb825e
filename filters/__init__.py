"""Built-in filter plugins: ``signal(df, param, column)``, the article's contract."""
