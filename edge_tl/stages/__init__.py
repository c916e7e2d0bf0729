"""Pipeline stages: each reads the artifact of the stage before and writes a new folder."""
