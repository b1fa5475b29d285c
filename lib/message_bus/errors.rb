# frozen_string_literal: true

module MessageBus
  # publish to a /global/ channel with user_ids or group_ids.
  class InvalidMessage < StandardError; end
  # publish with an empty user_ids, group_ids or client_ids list.
  class InvalidMessageTarget < InvalidMessage; end
  # publish or subscribe after destroy.
  class BusDestroyed < StandardError; end
  # The backend answered with an error.
  class BackendError < StandardError; end
  # The backend could not be reached.
  class ConnectionError < BackendError; end
end
