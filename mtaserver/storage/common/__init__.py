"""What the SQLite and the PostgreSQL owners of a table share: the values they answer
with, and the backend-free steps between a row and an answer (row → dataclass, counts →
report, export formatting, input checks).

One copy here means the two backends cannot drift apart in what they answer. Nothing in
this package runs SQL or holds a connection: each owner keeps its own statements (the two
dialects differ) and hands the rows it fetched to these functions.
"""
