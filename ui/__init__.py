"""What the command line shows: tables of builds, engine directories and runs."""
