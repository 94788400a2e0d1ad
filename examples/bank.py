"""The engine in one file: a bank whose accounts survive restarts.

Run it twice with the same directory to see the state recovered from the journal:
    python3 examples/bank.py [DATA_DIR]
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import prevalence


class Bank:  # the root: any plain Python object
    def __init__(self) -> None:
        self.accounts: dict[str, int] = {}


class InsufficientFunds(Exception):
    pass


@dataclass(frozen=True)
class Deposit(prevalence.Transaction, name="bank.Deposit"):
    account: str
    amount: int

    def execute(self, root: Bank, ctx: prevalence.Context) -> int:
        root.accounts[self.account] = root.accounts.get(self.account, 0) + self.amount
        return root.accounts[self.account]


@dataclass(frozen=True)
class Withdraw(prevalence.Transaction, name="bank.Withdraw"):
    account: str
    amount: int

    def check(self, root: Bank) -> None:  # rejects before anything is journaled
        if root.accounts.get(self.account, 0) < self.amount:
            raise InsufficientFunds(f"{self.account} has less than {self.amount}")

    def execute(self, root: Bank, ctx: prevalence.Context) -> int:
        root.accounts[self.account] -= self.amount
        return root.accounts[self.account]


@dataclass(frozen=True)
class Balance(prevalence.Query, name="bank.Balance"):
    account: str

    def run(self, root: Bank) -> int:
        return root.accounts.get(self.account, 0)


def main() -> int:
    data = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bank-")
    with prevalence.open(data, Bank) as db:
        print(f"opened {data} at index {db.last_index}: alice has {db.query(Balance('alice'))}")
        db.execute(Deposit("alice", 100))
        try:
            db.execute(Withdraw("alice", 10_000))
        except InsufficientFunds as exc:
            print(f"rejected, nothing journaled: {exc}")

        start = time.perf_counter()
        threads = [threading.Thread(target=lambda: [db.execute(Deposit("bob", 1)) for _ in range(250)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - start
        print(f"8 threads executed 2000 durable deposits in {took:.2f} s ({2000 / took:,.0f} tx/s, fsync=always)")
        meta = db.snapshot()
        print(f"snapshot at index {meta.index}: {meta.path}")
        last = db.last_index
    with prevalence.open(data, Bank) as db:  # recovery: snapshot + journal
        assert db.last_index == last
        print(f"reopened at index {db.last_index}: alice={db.query(Balance('alice'))} bob={db.query(Balance('bob'))}")
    print(f"inspect it: prevalence journal dump {data} --from {max(1, last - 2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
