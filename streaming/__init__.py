"""Stream processing: the Kafka replay and the PyFlink feature job."""
