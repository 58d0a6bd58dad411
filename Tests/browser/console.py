"""Drives a real, headless chromium (Debian's chromium + chromium-driver) through
selenium for the console's browser tests (Tests/TetherTests/ConsoleBrowserTests.swift).

Usage: console.py --hub https://127.0.0.1:PORT --artifacts DIR --downloads DIR

The test sends one JSON command per line on standard input and reads one reply per
command on standard output, as `REPLY N {json}` (N counts from 1), so every check
stays in the Swift test. The browser trusts exactly the hub's serving key (its SPKI
hash, --ignore-certificate-errors-spki-list): TLS is real, nothing else is trusted.

Commands:
  {"do": "signin", "sub": "ada"}      /login, the provider's form, the second factor
                                      (a TOTP code computed from the enrollment shown)
  {"do": "open", "path": "/console/"} the page; replies with its title, h1 and text
  {"do": "click", "css": "..."}       clicks the first match, then replies as open does
  {"do": "texts", "css": "..."}       the text of every match
  {"do": "download", "css": "...", "file": "NAME"}  clicks, waits for the file
  {"do": "screenshot", "name": "..."} saves ARTIFACTS/NAME.png
  {"do": "quit"}
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import ssl
import struct
import sys
import time
import urllib.parse

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as error:
    print(f"console.py: cannot start: {error}; run scripts/install-deps --tests", flush=True)
    sys.exit(2)


def spki_hash(hub):
    """base64(sha256(SubjectPublicKeyInfo)) of the hub's serving certificate."""
    parts = urllib.parse.urlsplit(hub)
    pem = ssl.get_server_certificate((parts.hostname, parts.port))
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def totp(uri, at=None):
    """RFC 6238 code for an otpauth:// URI (SHA-1, 6 digits, 30 s unless it says otherwise)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)
    secret = query["secret"][0].upper()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    period = int(query.get("period", ["30"])[0])
    digits = int(query.get("digits", ["6"])[0])
    counter = int((at or time.time()) // period)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = (struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF) % (10 ** digits)
    return str(value).zfill(digits)


class Console:
    def __init__(self, hub, artifacts, downloads):
        self.hub = hub.rstrip("/")
        self.artifacts = artifacts
        self.downloads = downloads
        self.secrets = {}
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--ignore-certificate-errors-spki-list=" + spki_hash(self.hub)]:
            options.add_argument(flag)
        options.add_experimental_option("prefs", {
            "download.default_directory": downloads, "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        })
        self.driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        self.driver.set_page_load_timeout(30)
        self.driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
        self.wait = WebDriverWait(self.driver, 20)

    def page(self):
        d = self.driver
        h1 = d.find_elements(By.TAG_NAME, "h1")
        errors = [e.get_attribute("textContent") for e in d.find_elements(By.CSS_SELECTOR, ".error")]
        return {"url": d.current_url, "title": d.title, "h1": h1[0].text if h1 else "", "text": d.find_element(By.TAG_NAME, "body").text,
                "errors": errors}

    def signin(self, sub):
        d = self.driver
        d.get(self.hub + "/login")
        # The provider's own form: who to sign in as.
        field = self.wait.until(expected_conditions.presence_of_element_located((By.NAME, "sub")))
        field.send_keys(sub)
        field.find_element(By.XPATH, "ancestor::form").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # Back at the hub: the second factor.
        code_field = self.wait.until(expected_conditions.presence_of_element_located((By.NAME, "code")))
        enrollment = [e.text for e in d.find_elements(By.TAG_NAME, "code") if e.text.startswith("otpauth://")]
        if enrollment:
            self.secrets[sub] = enrollment[0]
        uri = self.secrets.get(sub)
        if uri is None:
            raise RuntimeError("the hub asks for a code but showed no enrollment for " + sub)
        code_field.send_keys(totp(uri))
        self.screenshot("second-factor-" + sub)
        code_field.find_element(By.XPATH, "ancestor::form").submit()
        self.wait.until(lambda d: "/console/" in d.current_url or d.find_elements(By.CSS_SELECTOR, ".error"))
        return self.page()

    def screenshot(self, name):
        path = os.path.join(self.artifacts, name + ".png")
        self.driver.save_screenshot(path)
        return {"path": path}

    def download(self, css, file):
        target = os.path.join(self.downloads, file)
        if os.path.exists(target):
            os.remove(target)
        self.driver.find_element(By.CSS_SELECTOR, css).click()
        # Chrome writes NAME.crdownload, then renames it: wait for the final name.
        WebDriverWait(self.driver, 20).until(lambda _: os.path.exists(target) and os.path.getsize(target) > 0)
        return {"path": target}

    def run(self, command):
        what = command["do"]
        if what == "signin":
            return self.signin(command["sub"])
        if what == "open":
            self.driver.get(self.hub + command["path"])
            return self.page()
        if what == "click":
            self.driver.find_element(By.CSS_SELECTOR, command["css"]).click()
            self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
            return self.page()
        if what == "texts":
            return {"texts": [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, command["css"])]}
        if what == "download":
            return self.download(command["css"], command["file"])
        if what == "screenshot":
            return self.screenshot(command["name"])
        if what == "wait-text":
            WebDriverWait(self.driver, command.get("timeout", 20)).until(
                lambda d: command["text"] in d.find_element(By.CSS_SELECTOR, command["css"]).text)
            return self.page()
        raise ValueError("unknown command " + what)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hub", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--downloads", required=True)
    args = parser.parse_args()
    os.makedirs(args.artifacts, exist_ok=True)
    os.makedirs(args.downloads, exist_ok=True)
    try:
        console = Console(args.hub, args.artifacts, args.downloads)
    except Exception as error:
        print(f"console.py: cannot start: {type(error).__name__}: {error}", flush=True)
        sys.exit(2)
    print("READY", flush=True)
    n = 0
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            n += 1
            command = json.loads(line)
            if command["do"] == "quit":
                print(f"REPLY {n} {{}}", flush=True)
                break
            try:
                reply = console.run(command)
            except Exception as error:  # the test prints it and fails
                reply = {"failed": f"{type(error).__name__}: {error}", "page": console.page()}
                console.screenshot(f"failure-{n}")
            print(f"REPLY {n} {json.dumps(reply)}", flush=True)
    finally:
        console.driver.quit()


if __name__ == "__main__":
    main()
