"""Cross-region supervision alerts (docs/design.md §4.7): rules over records and list entries,
delivery to peer cities, regulators' subscriptions (Kafka, gRPC stream, webhooks), handling
status and SLA escalation. Run with ``python -m services.alerts``; see docs/alerts.md."""
