import sys; from persona_spark.cli import main; sys.exit(main(["label-users", *sys.argv[1:]]))
