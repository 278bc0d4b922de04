"""Fault injection: the durable engine on a backend whose writes fail (see :mod:`.faulty`)."""
