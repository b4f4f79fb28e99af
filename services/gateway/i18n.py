"""Japanese and English: the user's choice (a cookie), else the browser's; catalogs compiled at start-up."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask, request
from flask_babel import Babel, get_locale, get_translations
from markupsafe import Markup, escape

from services.gateway.security import LANGUAGE_COOKIE, LANGUAGES

TRANSLATIONS = Path(__file__).parent / "translations"


def select_locale() -> str:
    """The language cookie if set, else the best of the browser's languages, else English."""
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return request.accept_languages.best_match(LANGUAGES) or "en"


def compile_catalogs(source: Path = TRANSLATIONS) -> Path:
    """Compile the .po files into .mo files in a fresh temporary folder (generated files are not kept in git)."""
    target = Path(tempfile.mkdtemp(prefix="mailblast-gateway-i18n-"))
    for po_path in source.glob("*/LC_MESSAGES/*.po"):
        out = target / po_path.relative_to(source).with_suffix(".mo")
        out.parent.mkdir(parents=True, exist_ok=True)
        with po_path.open("rb") as fh:
            catalog = read_po(fh)
        with out.open("wb") as fh:
            write_mo(fh, catalog)
    return target


_COMPILED: Path | None = None


def init_i18n(app: Flask) -> Babel:
    """Flask-Babel with the compiled catalogs (compiled once per process)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = compile_catalogs()
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(_COMPILED)
    app.config["BABEL_DEFAULT_LOCALE"] = "en"
    app.jinja_env.globals["get_locale"] = get_locale
    babel = Babel(app, locale_selector=select_locale)
    # Jinja's gettext marks what it returns as safe markup (only its %-values are escaped), so a template's
    # _() on a value rather than a literal (a field label, say) would put that value in unescaped. The
    # catalog holds text, never markup: each translation is escaped before Jinja formats the values in.
    app.jinja_env.install_gettext_callables(
        gettext=_as_text(lambda s: get_translations().ugettext(s)),
        ngettext=_as_text(lambda s, p, n: get_translations().ungettext(s, p, n)),
        pgettext=_as_text(lambda c, s: get_translations().upgettext(c, s)),
        npgettext=_as_text(lambda c, s, p, n: get_translations().unpgettext(c, s, p, n)),
        newstyle=True,
    )
    return babel


def _as_text(lookup: Callable[..., str]) -> Callable[..., Markup]:
    return lambda *args: escape(lookup(*args))
