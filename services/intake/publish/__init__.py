"""Publishing events to Kafka in transactions, partitioned by subject."""
