"""``s3mount login PROFILE [--headless]``: run the provider's login and store what it yields.

Cleverbase and Clever Cloud open the consent page in a browser and catch the redirect on a loopback
port (``--headless``: print the URL and read the redirect address back from stdin); Lyve Cloud asks
for the Account API secret if the profile lacks it. What the login yields goes to the profile's token
file (``$XDG_CONFIG_HOME/s3mount/tokens/PROFILE.json``, mode 0600). Finally one fetch proves the
login gives keys. The test hook for the browser step is described in
``s3mount/credentials/browser.py`` (``S3MOUNT_TEST_BROWSER=http``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import load_profile
from ..credentials.build import LoginProvider, provider_from_profile
from . import CliError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("login", help="log in to a profile's storage provider",
                       description="Log in to the storage provider of PROFILE and store the "
                                   "tokens for later mounts.")
    p.add_argument("profile", metavar="PROFILE")
    p.add_argument("--headless", action="store_true",
                   help="do not open a browser: print the login URL and read the redirect "
                        "address from stdin")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    provider = provider_from_profile(profile, interactive=False)
    if not isinstance(provider, LoginProvider):
        raise CliError(f"profile {args.profile} uses provider {profile['provider']}: there is "
                       "nothing to log in to")
    provider.login(headless=args.headless)
    keys = provider.fetch()
    print(f"s3mount: logged in; profile {args.profile} gets keys for bucket "
          f"{keys.bucket or profile.get('bucket') or '(any)'}", file=sys.stderr)
    return 0
