"""Trading: balances with a ledger (``accounts``), the matching engine (``engine``), order use
cases (``orders``, ``order_request``) and the invariant checker (``reconcile``)."""
