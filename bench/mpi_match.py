"""Patient/$match precision and recall (issue 17 item 2): 10,000 generated Indian patients are registered with
the front desk rules on (FHIR_WORKFLOWS=frontdesk) on a fresh PostgreSQL database, in-process (transaction
Bundles of 500 through FhirServer.handle); then $match is asked about returning patients written the way a
front desk mistypes them (a letter swapped, dropped or doubled, a phonetic spelling, family name first, the
given name as an initial, a middle name left out, day and month of birth swapped or a digit wrong, no phone, a
new phone, no address) and about new people who are not registered. Prints a table and writes the
``mpi-match`` section of RESULTS.md (not with --quick).

A query declares a match when its best candidate is graded certain or probable: a true positive if that is
the patient the query was made from, else a false positive. precision = TP / declared; recall = TP /
returning queries. "in top 5" counts returning queries whose patient is among the (up to 5) returned.

    .venv/bin/python bench/mpi_match.py            # about 5 minutes
    .venv/bin/python bench/mpi_match.py --quick    # 1,000 patients, 200 queries
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_database, facts_markdown, log, machine_facts, percentile, table, write_section

from fhir_server.config import Settings
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade


def _words(text: str, sep: str | None = None) -> tuple[str, ...]:
    return tuple(text.split(sep))


MALE = _words("Aarav Abhishek Aditya Ajay Akash Amit Anand Anil Arjun Arun Ashok Deepak Dinesh Ganesh Gopal Harish "
              "Hemant "
        "Jagdish Kiran Krishna Manoj Mahesh Mohan Mukesh Naveen Nitin Pankaj Prakash Pradeep Rahul Rajesh Rakesh "
        "Ramesh Ravi Sachin Sanjay Santosh Satish Shankar Sunil Suresh Vijay Vikram Vinod Yogesh Srinivasan "
        "Venkatesh Subramanian Karthik Senthil Mohammed Imran Farhan Harpreet Gurpreet")
FEMALE = _words("Aarti Anita Anjali Asha Bhavna Deepa Divya Gayatri Geeta Jyoti Kavita Lakshmi Latha Meena Neha Nisha "
          "Pooja Priya Radha Rani Rekha Ritu Sangeeta Sarita Seema Shanti Shobha Sneha Sonia Sunita Swati Usha "
          "Vandana Vidya Yamini Padma Saraswathi Kamala Fatima Ayesha Simran Harleen Meenakshi Revathi")
FAMILY = _words("Sharma Verma Gupta Singh Kumar Patel Shah Reddy Rao Nair Menon Iyer Iyengar Pillai Das Ghosh Bose "
          "Banerjee Chatterjee Mukherjee Joshi Kulkarni Deshpande Patil Jadhav Pawar Yadav Mishra Tiwari Pandey "
          "Dubey Chauhan Rathore Agarwal Jain Mehta Desai Naidu Gowda Hegde Shetty Khan Ahmed Siddiqui Qureshi "
          "Gill Sandhu Dhillon Grewal Bhatt Thakur Saxena Srivastava Tripathi Chaudhary Malhotra Kapoor Khanna "
          "Arora Sethi Bhatia Krishnan Subramaniam Raman Natarajan Mohan Murthy")
MIDDLE = ("Kumar", "Prasad", "Lal", "Chand", "Nath", "Devi", "Bai", "Kumari", "Rani", "Mohan", "Ram", "Singh")
CITIES = [("Bengaluru", "5600"), ("Chennai", "6000"), ("Mumbai", "4000"), ("Pune", "4110"), ("Delhi", "1100"),
          ("Hyderabad", "5000"), ("Kolkata", "7000"), ("Lucknow", "2260"), ("Jaipur", "3020"), ("Kochi", "6820")]
STREETS = _words("MG Road|Station Road|Gandhi Nagar|Nehru Street|Temple Street|Main Road|Market Road|Civil Lines|"
           "Park Street|Lake View|Anna Nagar|Model Town", "|")
SWAPS = [("sh", "s"), ("ee", "i"), ("v", "w"), ("th", "t"), ("ksh", "x"), ("aa", "a"), ("ph", "f"), ("y", "i"),
         ("oo", "u"), ("w", "v"), ("i", "ee")]


def person(rng: random.Random) -> dict[str, Any]:
    gender = rng.choice(("male", "female"))
    given = [rng.choice(MALE if gender == "male" else FEMALE)]
    if rng.random() < 0.3:
        given.append(rng.choice(MIDDLE))
    city, pin = rng.choice(CITIES)
    p: dict[str, Any] = {
        "resourceType": "Patient", "gender": gender,
        "name": [{"given": given, "family": rng.choice(FAMILY)}],
        "birthDate": f"{rng.randint(1940, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "address": [{"line": [f"{rng.randint(1, 400)} {rng.choice(STREETS)}"], "city": city,
                     "postalCode": f"{pin}{rng.randint(1, 99):02d}"}]}
    if rng.random() < 0.85:
        p["telecom"] = [{"system": "phone", "value": f"{rng.choice('6789')}{rng.randint(0, 999_999_999):09d}"}]
    return p


def typo(word: str, rng: random.Random) -> str:
    kind = rng.random()
    low = word.lower()
    if kind < 0.3:
        for a, b in rng.sample(SWAPS, len(SWAPS)):
            if a in low:
                low = low.replace(a, b, 1)
                return low.capitalize()
    i = rng.randrange(1, max(2, len(low) - 1))
    if kind < 0.55 and len(low) > 3:
        low = low[:i] + low[i + 1:]  # a letter dropped
    elif kind < 0.75 and i + 1 < len(low):
        low = low[:i] + low[i + 1] + low[i] + low[i + 2:]  # two letters swapped
    elif kind < 0.9:
        low = low[:i] + low[i] + low[i:]  # a letter doubled
    else:
        low = low[:i] + rng.choice("aeiounrstm") + low[i + 1:]  # a wrong letter
    return low.capitalize()


def mistyped(p: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The patient as a front desk types them on their next visit."""
    q: dict[str, Any] = {"resourceType": "Patient", "gender": p["gender"]}
    given, family = list(p["name"][0]["given"]), p["name"][0]["family"]
    if rng.random() < 0.35:
        given[0] = typo(given[0], rng)
    if rng.random() < 0.25:
        family = typo(family, rng)
    if len(given) > 1 and rng.random() < 0.5:
        given = given[:1]  # the middle name left out
    if rng.random() < 0.15:
        given[0] = given[0][0] + "."  # the given name as an initial
    if rng.random() < 0.25:  # family name first, as one text
        q["name"] = [{"text": " ".join([family, *given])}]
    else:
        q["name"] = [{"given": given, "family": family}]
    y, m, d = p["birthDate"].split("-")
    r = rng.random()
    if r < 0.08 and int(d) <= 12 and d != m:
        q["birthDate"] = f"{y}-{d}-{m}"
    elif r < 0.16:
        i = rng.choice((3, 6, 9))
        digit = str((int(p["birthDate"][i]) + 1) % 10)
        candidate = p["birthDate"][:i] + digit + p["birthDate"][i + 1:]
        q["birthDate"] = candidate if int(candidate[5:7]) in range(1, 13) and int(candidate[8:]) in range(1, 29) \
            else p["birthDate"]
    else:
        q["birthDate"] = p["birthDate"]
    if "telecom" in p and rng.random() < 0.6:
        q["telecom"] = p["telecom"] if rng.random() < 0.9 else [{"system": "phone", "value": "9" + "0" * 9}]
    if rng.random() < 0.6:
        q["address"] = p["address"]
    return q


def handle(server: FhirServer, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = FhirRequest(method, path, [], {"content-type": "application/fhir+json"}, body=orjson.dumps(body),
                      base_url="http://bench/fhir", access=as_system("bench: registering and matching"))
    resp = server.handle(req)
    if resp.status >= 300:
        raise SystemExit(f"{method} {path}: {resp.status} {resp.resource}")
    assert resp.resource is not None
    return resp.resource


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1000, help="returning patients; as many new people again")
    args = ap.parse_args()
    n, queries = (1000, 100) if args.quick else (args.patients, args.queries)
    rng = random.Random(17)
    with bench_database("mpi") as url:
        facts = machine_facts(url)
        settings = Settings(database_url=url, workflows="frontdesk", audit_enabled=False, outbox_dispatcher=False,
                            binary_store_url=f"file:///tmp/mpi-bench-{uuid.uuid4().hex[:6]}")
        engine = make_engine(settings)
        upgrade(engine)
        server = FhirServer(settings, engine)
        people = [person(rng) for _ in range(n)]
        log(f"registering {n} patients")
        started = time.perf_counter()
        ids: list[str] = []
        for start in range(0, n, 500):
            entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": p,
                        "request": {"method": "POST", "url": "Patient"}} for p in people[start:start + 500]]
            out = handle(server, "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
            ids += [e["response"]["location"].split("/")[1] for e in out["entry"]]
        load_s = time.perf_counter() - started
        log(f"registered in {load_s:.0f} s; matching")
        cases = [(mistyped(people[i], rng), ids[i]) for i in rng.sample(range(n), queries)]
        cases += [(person(rng), None) for _ in range(queries)]
        tp = fp = top5 = 0
        times: list[float] = []
        for query, truth in cases:
            body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": query},
                                                                 {"name": "count", "valueInteger": 5}]}
            t0 = time.perf_counter()
            bundle = handle(server, "POST", "Patient/$match", body)
            times.append(time.perf_counter() - t0)
            entries = bundle.get("entry") or []
            found = [e["resource"]["id"] for e in entries]
            if truth is not None and truth in found:
                top5 += 1
            if entries and entries[0]["search"]["extension"][0]["valueCode"] in ("certain", "probable"):
                if found[0] == truth:
                    tp += 1
                else:
                    fp += 1
        engine.dispose()
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / queries
    rows = [[f"{n:,}", f"{queries:,} + {queries:,}", f"{precision:.3f}", f"{recall:.3f}", f"{top5 / queries:.3f}",
             f"{tp}", f"{fp}", f"{sum(times) / len(times) * 1000:.1f}", f"{percentile(times, 95) * 1000:.1f}",
             f"{load_s / n * 1000:.1f}"]]
    headers = ["patients", "queries (returning + new)", "precision", "recall", "in top 5", "true pos.", "false pos.",
               "$match mean ms", "$match p95 ms", "register ms/patient"]
    print(table(headers, rows))
    if args.quick:
        return
    write_section("mpi-match", "\n\n".join([
        "## Patient/$match precision and recall (`bench/mpi_match.py`)", facts_markdown(facts),
        f"Dataset: {n:,} generated Indian patients (given, sometimes a middle name, family; birth date; gender; "
        "a phone for 85%; an address) registered through transaction Bundles of 500 with FHIR_WORKFLOWS=frontdesk "
        "(each create checked for duplicates), on PostgreSQL, in-process. Queries: returning patients as a front "
        "desk mistypes them (name typos and phonetic spellings, family name first, initials, a middle name left "
        "out, birth date day/month swapped or a digit wrong, no or another phone, no address) and as many new "
        "people. A match is declared when the best candidate is certain or probable; precision = right / "
        "declared, recall = right / returning queries. Time per $match is in-process (no HTTP).",
        table(headers, rows)]))


if __name__ == "__main__":
    main()
