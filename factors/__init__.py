"""Built-in factor plugins: ``signal(df, back_hour, d_num, column)``, the article's contract."""
