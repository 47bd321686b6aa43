import sys; from persona_spark.cli import main; sys.exit(main(["label-items", *sys.argv[1:]]))
