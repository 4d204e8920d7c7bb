#!/usr/bin/python3
"""Writes updateinfo.xml for the fixture with createrepo_c's own writer (run by make-fixture.sh)."""
import datetime, hashlib, os
import createrepo_c as cr

def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()

def pkg(name, epoch, ver, rel, arch, src, fname=None):
    p = cr.UpdateCollectionPackage()
    p.name, p.epoch, p.version, p.release, p.arch, p.src = name, epoch, ver, rel, arch, src
    p.filename = fname or f"{name}-{ver}-{rel}.{arch}.rpm"
    path = os.path.join("repo/Packages", p.filename)  # run from the work dir
    if os.path.exists(path):
        p.sum, p.sum_type = sha(path), cr.SHA256
    return p

def ref(typ, id_, href, title):
    r = cr.UpdateReference()
    r.type, r.id, r.href, r.title = typ, id_, href, title
    return r

def rec(id_, typ, title, severity, issued, refs, pkgs, summary, rel="lanmirror 1"):
    u = cr.UpdateRecord()
    u.fromstr = "security@lanmirror.example"
    u.status = "final"
    u.type = typ
    u.version = "1"
    u.id = id_
    u.title = title
    u.issued_date = issued
    u.updated_date = issued + datetime.timedelta(days=1)
    u.rights = "Copyright 2026 lanmirror tests"
    u.release = rel
    if severity is not None:
        u.severity = severity
    u.summary = summary
    u.description = summary + "\n\nFixes:\n* a & b < c"
    u.solution = "Run dnf update."
    for r in refs:
        u.append_reference(r)
    c = cr.UpdateCollection()
    c.shortname = "lanmirror-tests"
    c.name = "lanmirror test collection"
    for p in pkgs:
        c.append(p)
    u.append_collection(c)
    return u

ui = cr.UpdateInfo()
d = datetime.datetime
ui.append(rec("LMSA-2026:0001", "security", "Important: lm-alpha security update", "Important",
    d(2026, 3, 1, 10, 0, 0),
    [ref("cve", "CVE-2026-1111", "https://cve.example/CVE-2026-1111", "CVE-2026-1111"),
     ref("cve", "CVE-2026-2222", "https://cve.example/CVE-2026-2222", "CVE-2026-2222"),
     ref("bugzilla", "12345", "https://bugs.example/12345", "lm-alpha crashes on & input"),
     ref("self", "LMSA-2026:0001", "https://errata.example/LMSA-2026:0001", "LMSA-2026:0001")],
    [pkg("lm-alpha", "0", "1.1", "1", "noarch", "lm-alpha-1.1-1.src.rpm"),
     pkg("lm-alpha", "0", "1.1", "1", "src", "lm-alpha-1.1-1.src.rpm")],
    "An update for lm-alpha is now available."))
ui.append(rec("LMBA-2026:0002", "bugfix", "lm-beta bug fix update", None,
    d(2026, 3, 2, 11, 30, 0),
    [ref("bugzilla", "23456", "https://bugs.example/23456", "lm-beta prints twice")],
    [pkg("lm-beta", "0", "1.0", "2", "noarch", "lm-beta-1.0-2.src.rpm")],
    "An update for lm-beta is now available."))
ui.append(rec("LMSA-2026:0003", "security", "Critical: lm-gamma security update", "Critical",
    d(2026, 3, 3, 9, 15, 0),
    [ref("cve", "CVE-2026-3333", "https://cve.example/CVE-2026-3333", "CVE-2026-3333")],
    [pkg("lm-gamma", "0", "2.0", "2", "x86_64", "lm-gamma-2.0-2.src.rpm"),
     pkg("lm-gamma", "0", "2.0", "2", "i686", "lm-gamma-2.0-2.src.rpm")],
    "An update for lm-gamma is now available."))
ui.append(rec("LMEA-2026:0004", "enhancement", "lm-delta enhancement update", "Low",
    d(2026, 3, 4, 8, 0, 0),
    [],
    [pkg("lm-delta", "1", "3.0", "1", "x86_64", "lm-delta-3.0-1.src.rpm")],
    "lm-delta gains a feature."))
open("updateinfo.xml", "w").write(ui.xml_dump())
