"""Re-rankers: stages that re-order a first-stage retriever's top-K (VISA, similarity heads)."""
