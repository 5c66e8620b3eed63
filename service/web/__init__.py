"""What the pages for people share: sign-in sessions, same-origin forms, the CSP renderer."""
