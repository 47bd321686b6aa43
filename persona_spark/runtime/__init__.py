"""Spark plumbing every layer above it shares: the session, pinning, run ids and change sets, frames.

Nothing here knows about personas; the domain modules and the stages build on it.
"""
