"""persona-spark: customer personas from purchase graphs (GPLR) as Spark jobs."""

from persona_spark.runtime.worker import skip_zip_rereads_per_task

skip_zip_rereads_per_task()  # in a Spark Python worker only: its tasks run this package's code
