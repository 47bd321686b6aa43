import sys; from persona_spark.cli import main; sys.exit(main(["generate-personas", *sys.argv[1:]]))
