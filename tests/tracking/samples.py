"""Real-world shaped messages for the tracking tests."""

from __future__ import annotations

import base64
import binascii

NEWSLETTER_HTML = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<link rel="stylesheet" href="https://cdn.example.com/mail.css">
<base href="https://www.example.com/">
<style type="text/css">
  a.button { color: #fff; } /* <a href="http://style.example/">not a link</a> */
</style>
<title>November news</title>
</head>
<body style="margin:0;padding:0">
<a name="top"></a>
<table width="100%" cellpadding="0" cellspacing="0" border="0">
  <tr>
    <td align="center"><A HREF="https://www.example.com/shop?utm_source=mail&amp;utm_medium=email&amp;id=42">Shop the sale &#8211; caf\u00e9 cr\u00e8me</A></td>
  </tr>
  <tr>
    <td><a href=http://www.example.com/unquoted>Unquoted</a> and <a class='x' href='https://example.org/single?q=a%20b'>single quoted</a></td>
  </tr>
  <tr>
    <td><a
        href = "https://example.net/multi-line"
        target="_blank">Across lines</a></td>
  </tr>
  <tr><td><a href="mailto:sales@example.com?subject=Hi">Write to us</a> |
  <a href="#top">Back to top</a> | <a href="/relative/path">Relative</a> |
  <a href="javascript:alert(1)">Script</a> |
  <a href="https://www.example.com/privacy" data-mtaserver-notrack>Privacy</a> |
  <a data-notrack="" href="https://www.example.com/terms">Terms</a></td></tr>
  <tr><td><area shape="rect" coords="0,0,10,10" href="HTTPS://MAP.EXAMPLE.COM/Area"></td></tr>
  <!-- <a href="https://commented.example/">commented out</a> -->
  <!--[if mso]><v:roundrect href="https://www.example.com/shop?utm_source=mail&amp;utm_medium=email&amp;id=42" style="height:40px"><![endif]-->
  <tr><td>Again: <a href="https://www.example.com/shop?utm_source=mail&utm_medium=email&id=42">shop</a>
  \u00fcml\u00e4uts &amp; entities &lt;kept&gt;</td></tr>
</table>
<script>var u = "<a href='https://script.example/'>x</a>";</script>
</BODY>
</html>
"""

# What a reader's browser should follow for each distinct tracked link, in order.
NEWSLETTER_LINKS = (
    "https://www.example.com/shop?utm_source=mail&utm_medium=email&id=42",
    "http://www.example.com/unquoted",
    "https://example.org/single?q=a%20b",
    "https://example.net/multi-line",
    "HTTPS://MAP.EXAMPLE.COM/Area",
)
UNTOUCHED = (
    "mailto:sales@example.com?subject=Hi",
    'href="#top"',
    'href="/relative/path"',
    "javascript:alert(1)",
    "https://www.example.com/privacy",
    "https://www.example.com/terms",
    "https://cdn.example.com/mail.css",
    'base href="https://www.example.com/"',
    "https://commented.example/",
    "https://script.example/",
    "http://style.example/",
)

PLAIN = (
    "Shop the sale - caf\u00e9 cr\u00e8me: https://www.example.com/shop?id=42\r\n"
    "Write to us: sales@example.com\r\n"
)


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _b64(data: bytes) -> bytes:
    flat = base64.b64encode(data)
    return b"\r\n".join(flat[i : i + 76] for i in range(0, len(flat), 76))


def _qp(data: bytes) -> bytes:
    return binascii.b2a_qp(data, istext=True)


HEADERS = (
    b"Received: from app.example.com (app.example.com [192.0.2.10])\r\n"
    b"\tby mx.example.com with ESMTPSA id ABC123\r\n"
    b"From: =?UTF-8?Q?Caf=C3=A9_News?= <news@example.com>\r\n"
    b"To: Reader <reader@example.org>\r\n"
    b"Subject: =?UTF-8?Q?November_news=0D=0ABcc:_injected@example.net?=\r\n"
    b"Date: Fri, 27 Nov 2026 14:00:00 +0000\r\n"
    b"Message-ID: <news-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
)


def alternative(
    html_encoding: str = "quoted-printable", text_encoding: str = "quoted-printable"
) -> bytes:
    """multipart/alternative: text/plain + text/html, each in the given encoding."""
    html = _crlf(NEWSLETTER_HTML).encode("utf-8")
    text = _crlf(PLAIN).encode("utf-8")

    def body(data: bytes, enc: str) -> bytes:
        return _b64(data) if enc == "base64" else _qp(data) if enc == "quoted-printable" else data

    return (
        HEADERS
        + b'Content-Type: multipart/alternative;\r\n\tboundary="=_b1_alt"\r\n'
        + b"\r\nThis is a multi-part message in MIME format.\r\n"
        + b"--=_b1_alt\r\n"
        + b"Content-Type: text/plain; charset=UTF-8\r\n"
        + b"Content-Transfer-Encoding: "
        + text_encoding.encode()
        + b"\r\n\r\n"
        + body(text, text_encoding)
        + b"\r\n--=_b1_alt\r\n"
        + b'Content-Type: text/html; charset="utf-8"\r\n'
        + b"Content-Transfer-Encoding: "
        + html_encoding.encode()
        + b"\r\n\r\n"
        + body(html, html_encoding)
        + b"\r\n--=_b1_alt--\r\n"
    )


def mixed_with_attachment() -> bytes:
    """multipart/mixed: an alternative (base64 HTML) + an attached HTML file + an image."""
    inner = alternative("base64", "7bit").split(b"MIME-Version: 1.0\r\n", 1)[1]
    return (
        HEADERS
        + b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        + b"--outer\r\n"
        + inner
        + b"\r\n--outer\r\n"
        + b'Content-Type: text/html; charset=us-ascii; name="report.html"\r\n'
        + b'Content-Disposition: attachment; filename="report.html"\r\n\r\n'
        + b'<html><body><a href="https://attached.example/">x</a></body></html>\r\n'
        + b"--outer\r\n"
        + b"Content-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b"R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7\r\n"
        + b"--outer--\r\n"
    )


def latin1_8bit() -> bytes:
    """Single-part text/html, ISO-8859-1, 8bit, bare body without </body>."""
    html = '<p>Gr\u00fc\u00dfe! <a href="https://example.de/\u00e4?x=1&amp;y=2">Hier</a></p>\r\n'
    return (
        b"From: a@example.de\r\nTo: b@example.org\r\nSubject: Hallo\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + html.encode("iso-8859-1")
    )
