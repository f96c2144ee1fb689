"""batchd: async batch operations for an approval workflow."""
