"""Coverage-guided fuzzing of every parser and the EDL decoder (`make fuzz`, atheris)."""
