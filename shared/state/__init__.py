"""What runs leave in the runs container: the lock, the snapshot, the checkpoint, reports and receipts."""
