"""The fine-tuning API's services: files, the job store, and the job runner."""
