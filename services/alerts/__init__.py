"""Cross-region supervision alerts (DESIGN §4): rules over credit records and list entries,
delivery to peer cities, regulators' subscriptions (Kafka, gRPC stream, webhooks), handling
status and SLA escalation. Run with ``python -m services.alerts``; see docs/alerts.md."""
