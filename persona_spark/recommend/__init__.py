"""Graph recommenders over users, items and personas (LGCN, LGCN3, A-LGCN3, AFDGCF, baselines).

The Spark side (``export``) hands a directory of Parquet files to a torch trainer that needs no
Spark. Importing this package imports neither torch nor Spark: each module pulls in only what it
uses, so the core package stays light and ``torch`` stays an optional extra (``[train]``).
"""
