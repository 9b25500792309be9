"""The matching engine as pure functions: priority, maker price, self-trade, fees, postings."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal as D
from fractions import Fraction

from stockex.config import MarketSettings
from stockex.trading.engine import Resting, Taker, apply_to_maker, fill_postings, match

MARKET = MarketSettings(id="asaxu", base="ASA", quote="XU", price_precision=0,
                        amount_precision=3, min_amount=D("0.001"), maker_fee=D("0.001"),
                        taker_fee=D("0.002"))
FEES = 99


def ask(order_id: int, user: int, price: str, amount: str, filled: str = "0") -> Resting:
    unfilled = D(amount) - D(filled)
    return Resting(order_id, user, "sell", D(price), D(amount), D(filled), D(0), D(0), unfilled)


def bid(order_id: int, user: int, price: str, amount: str) -> Resting:
    return Resting(order_id, user, "buy", D(price), D(amount), D(0), D(0), D(0),
                   D(price) * D(amount))


def test_best_price_then_oldest_first_at_the_makers_price() -> None:
    book = [ask(3, 2, "99", "1"), ask(1, 3, "100", "1"), ask(2, 4, "100", "1")]
    taker = Taker(1, "buy", "limit", "GTC", D("105"), D("2.5"))
    result = match(taker, book, MARKET)
    assert [(f.maker.id, f.price, f.amount) for f in result.fills] == [
        (3, D("99"), D("1")), (1, D("100"), D("1")), (2, D("100"), D("0.5"))
    ]
    assert result.filled_amount == D("2.5")
    assert result.filled_quote == D("249")
    assert result.complete


def test_limit_stops_at_its_price() -> None:
    book = [ask(1, 2, "100", "1"), ask(2, 2, "101", "1")]
    result = match(Taker(1, "buy", "limit", "GTC", D("100"), D("5")), book, MARKET)
    assert [f.maker.id for f in result.fills] == [1]
    assert not result.complete


def test_own_resting_orders_are_cancelled_and_matching_goes_on() -> None:
    book = [ask(1, 7, "100", "1"), ask(2, 2, "100", "1")]
    result = match(Taker(7, "buy", "limit", "GTC", D("100"), D("1")), book, MARKET)
    assert [m.id for m in result.self_cancelled] == [1]
    assert [f.maker.id for f in result.fills] == [2]


def test_market_buy_by_quote_buys_whole_steps_only() -> None:
    book = [ask(1, 2, "3", "1"), ask(2, 2, "7", "10")]
    result = match(Taker(1, "buy", "market", "IOC", None, None, D("10")), book, MARKET)
    # 1 @ 3 = 3, then 7 XU left buys 1.000 @ 7
    assert [(f.price, f.amount) for f in result.fills] == [(D("3"), D("1")), (D("7"), D("1"))]
    assert result.complete
    thin = match(Taker(1, "buy", "market", "IOC", None, None, D("100")), [ask(1, 2, "3", "1")],
                 MARKET)
    assert thin.filled_quote == D("3") and not thin.complete


def test_a_market_buy_by_quote_is_complete_once_its_quote_buys_no_further_step() -> None:
    """10 XU buys 1.428 of the ask at 7 (0.004 XU left, less than a step): the order got all
    its quote could buy whatever rests behind, so it is complete (filled; FOK goes through)
    and orders of its own further up the book are left alone. It was complete only when
    another order rested behind, and an own order there was cancelled on the way."""
    alone = match(Taker(1, "buy", "market", "FOK", None, None, D("10")), [ask(1, 2, "7", "5")],
                  MARKET)
    assert [(f.price, f.amount) for f in alone.fills] == [(D("7"), D("1.428"))]
    assert alone.complete
    book = [ask(1, 2, "7", "5"), ask(2, 1, "8", "1"), ask(3, 2, "9", "1")]
    behind = match(Taker(1, "buy", "market", "FOK", None, None, D("10")), book, MARKET)
    assert behind.complete and behind.self_cancelled == []


def test_a_market_buy_by_quote_leaves_an_own_order_it_cannot_reach_alone() -> None:
    """10.01 XU takes the whole ask of 1 at 10 (10 XU), and the 0.01 XU left buys no step at
    20: the own order resting there is out of reach, so it stays, and the order is complete
    (filled; FOK goes through) whether or not another order rests behind it. The own order
    was cancelled as a self-trade before the quote was held against its price."""
    for behind in ([], [ask(3, 2, "20", "1")]):
        book = [ask(1, 2, "10", "1"), ask(2, 1, "20", "1"), *behind]
        result = match(Taker(1, "buy", "market", "FOK", None, None, D("10.01")), book, MARKET)
        assert [(f.price, f.amount) for f in result.fills] == [(D("10"), D("1"))]
        assert result.self_cancelled == [] and result.complete
    reachable = match(Taker(1, "buy", "market", "IOC", None, None, D("30")),
                      [ask(1, 2, "10", "1"), ask(2, 1, "20", "1"), ask(3, 2, "20", "1")], MARKET)
    assert [m.id for m in reachable.self_cancelled] == [2]  # 20 XU left buys 1 at 20


def test_fees_come_from_what_each_side_receives() -> None:
    taker = Taker(1, "buy", "limit", "GTC", D("110"), D("2"))
    maker = ask(5, 2, "100", "2")
    fill = match(taker, [maker], MARKET).fills[0]
    assert fill.taker_fee == D("0.004")  # 0.2% of 2 ASA bought
    assert fill.maker_fee == D("0.2")  # 0.1% of 200 XU sold for
    deltas: dict[tuple[int, str], list[D]] = defaultdict(lambda: [D(0), D(0)])
    for user, asset, d_available, d_locked in fill_postings(taker, fill, MARKET, FEES):
        deltas[(user, asset)][0] += d_available
        deltas[(user, asset)][1] += d_locked
    # the buyer locked 110 x 2 and pays 100 x 2: the 20 saved is released at once
    assert deltas[(1, "XU")] == [D("20"), D("-220")]
    assert deltas[(1, "ASA")] == [D("1.996"), D(0)]
    assert deltas[(2, "ASA")] == [D(0), D("-2")]
    assert deltas[(2, "XU")] == [D("199.8"), D(0)]
    assert deltas[(FEES, "ASA")] == [D("0.004"), D(0)]
    assert deltas[(FEES, "XU")] == [D("0.2"), D(0)]
    for asset in ("ASA", "XU"):  # a fill moves assets between accounts, creates none
        assert sum(sum(v) for (u, a), v in deltas.items() if a == asset) == 0


def test_a_resting_buy_keeps_price_times_unfilled_locked() -> None:
    maker = bid(1, 2, "100", "3")
    fill = match(Taker(1, "sell", "limit", "GTC", D("90"), D("1.25")), [maker], MARKET).fills[0]
    apply_to_maker(fill)
    assert maker.filled_amount == D("1.25")
    assert maker.locked == D("100") * (D("3") - D("1.25"))


def test_sell_taker_postings_balance_out() -> None:
    taker = Taker(1, "sell", "market", "IOC", None, D("1"))
    fill = match(taker, [bid(1, 2, "100", "3")], MARKET).fills[0]
    postings = fill_postings(taker, fill, MARKET, FEES)
    for asset in ("ASA", "XU"):
        assert sum(p[2] + p[3] for p in postings if p[1] == asset) == 0


FINE = MarketSettings(id="finefine", base="FIN", quote="E", price_precision=6,
                      amount_precision=12, min_amount=D("0.000000000001"), maker_fee=D("0.001"),
                      taker_fee=D("0.002"))


def test_amounts_of_36_digits_are_computed_unrounded() -> None:
    """Python's default context keeps 28 digits; a market with 18 decimals between price and
    amount reaches 36 (still below 10^18): totals, reservations and postings stay exact."""
    price, amount = D("1000000.123456"), D("1000000.123456789012")
    taker = Taker(1, "buy", "limit", "GTC", price, amount)
    assert taker.reservation() == D("1000000246912.804253481344265472")
    fill = match(taker, [ask(1, 2, "1000000.123455", "1000000.123456789012")], FINE).fills[0]
    assert fill.total == D("1000000246911.804253357887476460")
    postings = fill_postings(taker, fill, FINE, FEES)
    # what the better maker price saves is released, to the last of its 36 digits
    assert (1, "E", D("1.000000123456789012"), D("-1000000246912.804253481344265472")) \
        in postings
    for asset in ("FIN", "E"):  # summed as fractions: the test's own sums must not round
        assert sum(Fraction(p[2]) + Fraction(p[3]) for p in postings if p[1] == asset) == 0


def test_a_market_buy_by_quote_never_spends_more_than_its_quote_amount() -> None:
    """10000000000.000000000001 steps of 3 cost 30000000000.000000000003, a millionth of a
    step more than the quote; a 28-digit division rounded the quotient up to it."""
    quote = D("30000000000.000000000002999999")
    taker = Taker(1, "buy", "market", "IOC", None, None, quote)
    result = match(taker, [ask(1, 2, "3", "20000000000")], FINE)
    assert result.filled_amount == D("10000000000")
    assert result.filled_quote == D("30000000000") <= quote
