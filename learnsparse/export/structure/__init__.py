"""Structure export: turn structured zeros (filters, channels, shape fibres, whole residual
branches) into smaller layers. Each pass here is exact; `condense` verifies the result."""
