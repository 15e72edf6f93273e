"""What the app is told: app settings, the destinations document, secrets, time budgets, storage clients."""
