"""What tests, benchmarks and the demo notebooks use in place of outside services.

:mod:`persona_spark.testing.openai_server` is an HTTP server on 127.0.0.1 that speaks the OpenAI chat,
files and Batch protocols, so the real client code runs without a provider.
"""
