"""Installed versions of the packages a result depends on, so it can be traced."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata as importlib_metadata


def package_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """``{distribution: version}``; None for a package that is not installed."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    """`package_versions` without the packages that are not installed."""
    return {name: v for name, v in package_versions(packages).items() if v is not None}
