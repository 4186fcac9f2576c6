"""Who is asking and what they may do: user identity, operators and community admins, places."""
