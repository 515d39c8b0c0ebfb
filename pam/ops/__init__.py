"""Running the pipeline: the nightly stages in order (``pipeline``), the local Prefect
server (``prefect_server``) and schedules (``schedule``). The flows in ``flows/`` wrap these."""
