"""Demo data (issue #3, SPEC O6): a deterministic zh-CN data set — org tree, staff, members,
orders, refunds and behaviour events for one of six industries — written as CSV files and loaded
through the import pipeline, the same path a customer's files take. Owns no tables."""
